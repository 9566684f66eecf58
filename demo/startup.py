"""The demo's predictor, made in a thread of its own so that the page serves before torch is imported.

Importing torch and timm and loading the default model take about 5 s on a 2-vCPU Space, more than Gradio
itself (issue 16). The page needs none of it (`demo.gradio_ui` and its handlers import no torch), so app.py
builds and serves the page, then starts this; what needs a model waits for it (`Startup.predictor`), and
each page load fills in the model's side once it is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from demo.catalog import ModelCatalog
from trainer.errors import ChexlabError

if TYPE_CHECKING:
    from demo.predictor import LoadedModel, Predictor

log = logging.getLogger(__name__)

__all__ = ["READY", "Startup"]

READY = "models ready"  # the start of the log line (INFO) that says so: bench/speed.py waits for it


class Startup:
    """A `Predictor(catalog, **options)` made by a daemon thread, which loads the default model first.

    `start` begins (once; app.py calls it when the page serves: the page's build and launch would otherwise
    share the CPU with torch's import), and whatever needs the predictor starts it if nobody has.
    """

    def __init__(self, catalog: ModelCatalog, **options: Any) -> None:
        self.catalog = catalog
        self._options = options
        self._future: Future[Predictor] = Future()
        self._started = False
        self._default: tuple[LoadedModel | None, Exception | None] | None = None  # see `default_model`
        self._lock = threading.Lock()

    @classmethod
    def of(cls, predictor: Predictor) -> Startup:
        """The start-up of a predictor that exists already (done)."""
        startup = cls(predictor.catalog)
        startup._started = True
        startup._future.set_result(predictor)
        return startup

    def start(self) -> Startup:
        """Begin making the predictor in its thread, unless that has begun."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._make, name="chexlab-start", daemon=True).start()
        return self

    def done(self) -> bool:
        """Whether the predictor is made (or failed to be)."""
        return self._future.done()

    @property
    def predictor(self) -> Predictor:
        """The predictor, once its default model is loaded or failed to (the page shows why:
        `demo.gradio_handlers.load_default`); waits for it, starting it if need be, and raises what stopped
        it from being made."""
        self.start()
        return self._future.result()

    def default_model(self) -> LoadedModel | None:
        """The catalog's default model (None when it has none), loaded once: a failure is logged once and
        raised again to every caller (each page load shows it, no page load retries it)."""
        predictor = self.predictor
        with self._lock:
            if self._default is None:
                self._default = _load_default(predictor)
        model, error = self._default
        if error is not None:
            raise error
        return model

    def _make(self) -> None:
        began = time.perf_counter()
        try:
            from demo.predictor import Predictor  # torch and timm: the reason for this thread

            predictor = Predictor(self.catalog, **self._options)
        except Exception as err:  # a bug or a broken install: logged here, once; each page says so
            log.exception("the predictor could not be made")
            self._future.set_exception(err)
            return
        with self._lock:  # before the future: whoever waits for the predictor finds its default loaded
            self._default = _load_default(predictor)
        log.info("%s: torch, timm and the default model in %.1f s", READY, time.perf_counter() - began)
        self._future.set_result(predictor)


def _load_default(predictor: Predictor) -> tuple[LoadedModel | None, Exception | None]:
    """(the default model or None, None), or (None, what stopped it from loading), logged."""
    default = predictor.default
    if default is None:
        return None, None
    try:
        return predictor.load(default), None
    except ChexlabError as err:
        log.error("default model %s: %s", default, err)
        return None, err
    except Exception as err:  # weights that break the model, or a bug
        log.exception("loading the default model %s failed", default)
        return None, err
