"""The shared-noise, class-batched scheduler: sampling plan, policies, planner and runner."""
