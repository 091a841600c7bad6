"""One classifier's engine, fed by several callers at once.

A worker that receives images in blocks (a Ray Data actor) would drain its engine at the end of
every block if it classified each block on its own: the last images of a block run in small
batches while the next block waits. `FedStream` keeps one engine running in a thread of its own
and lets each caller put its images into that engine's stream and wait for its own results, so
the images of the next block fill the batches the last images of this one leave empty.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import torch

from fastgen.api.classifier import DiffusionClassifier
from fastgen.engine.runner import PAUSE
from fastgen.inputs.images import ImageInput


class FedStream:
    """`classify(pairs)` may be called from several threads; every call's images join one stream.
    `wait_s`: how long the engine waits for more images before it runs the batches it holds."""

    def __init__(self, clf: DiffusionClassifier, *, wait_s: float = 0.005):
        self.clf = clf
        self.wait_s = wait_s
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._submitting = threading.Lock()  # one call's images go in together, before the next call's
        self._tokens = itertools.count()
        self._threads = torch.get_num_threads()  # OpenMP's team size is per thread: the engine's is set again
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fastgen-fed-engine", daemon=True)
        self._thread.start()

    def _source(self) -> Iterator[Any]:
        while True:
            try:
                yield self._inbox.get(timeout=self.wait_s)
            except queue.Empty:
                yield PAUSE

    def _run(self) -> None:
        torch.set_num_threads(self._threads)
        try:
            for token, outcome in self.clf.classify_stream(self._source()):
                with self._lock:
                    future = self._waiting.pop(token)
                future.set_result(outcome)
        except BaseException as error:  # the engine is gone: every caller learns why
            with self._lock:
                self._failure = error
                waiting, self._waiting = list(self._waiting.values()), {}
            for future in waiting:
                future.set_exception(error)

    def classify(self, pairs: Iterable[tuple[Any, ImageInput]]) -> list[tuple[Any, Any]]:
        """(key, result or ImageError) for every (key, image), in the order given; blocks until
        this call's images are done, whatever else the stream holds. The images of calls made at
        once enter the engine call by call, not interleaved: the first call's images are done
        first instead of all calls finishing together at the end."""
        submitted = []
        with self._submitting:
            for key, image in pairs:
                future: Future = Future()
                with self._lock:
                    if self._failure is not None:
                        raise RuntimeError("the classifier's engine stopped") from self._failure
                    token = next(self._tokens)
                    self._waiting[token] = future
                self._inbox.put((token, image))
                submitted.append((key, future))
        return [(key, future.result()) for key, future in submitted]
