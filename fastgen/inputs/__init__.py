"""What a user hands in: images (files, PIL, arrays, tensors) and classes (names, templates, CSVs)."""
