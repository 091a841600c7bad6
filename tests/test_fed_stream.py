"""`FedStream`: several callers feed one engine (a Ray actor's blocks). Each call gets exactly its
own images' results, the same as classifying them alone, and the images of calls made at once
enter the engine call by call, so the first call given is the first done."""

from __future__ import annotations

import threading
import time

import numpy as np

from fastgen import DiffusionClassifier
from fastgen.api.fed_stream import FedStream
from fastgen.builtin.digits_data import digits_split, to_pil


def test_concurrent_calls_enter_one_by_one_and_get_their_own_results():
    _, _, test_x, _ = digits_split()
    images = [to_pil(x) for x in test_x[:24]]
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 2}, batch_size=40
    )
    alone = clf.classify(images)
    stream = FedStream(clf)
    # Record the calling thread of every image as it enters the engine's inbox.
    entered: list[str] = []
    put = stream._inbox.put

    def recording_put(item, *args, **kwargs):
        entered.append(threading.current_thread().name)
        return put(item, *args, **kwargs)

    stream._inbox.put = recording_put

    def slow(pairs):  # a caller whose images arrive one by one: another call starts meanwhile
        for pair in pairs:
            time.sleep(0.002)
            yield pair

    results: dict[str, list] = {}
    started = threading.Event()

    def call(name: str, pairs) -> None:
        started.set()
        results[name] = stream.classify(pairs)

    first = threading.Thread(target=call, name="first", args=("first", slow(list(enumerate(images[:12])))))
    second = threading.Thread(target=call, name="second", args=("second", list(enumerate(images[12:], 12))))
    first.start()
    started.wait()
    time.sleep(0.005)
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)

    assert entered == ["first"] * 12 + ["second"] * 12  # not interleaved
    for name, pairs in results.items():
        for key, result in pairs:
            assert (key < 12) == (name == "first")
            np.testing.assert_allclose(result.errors, alone[key].errors, rtol=1e-5, atol=1e-7)
            assert result.prediction == alone[key].prediction
