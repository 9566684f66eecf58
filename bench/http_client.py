"""A /predict call over HTTP the way the page makes it, for the speed and load benchmarks.

The page's JavaScript client uploads the file, joins the queue, reads the answer from the session's event
stream as soon as the server sends it, then fetches the returned images. gradio_client makes the same
requests but waits for each queue message in a loop that sleeps 50 ms between looks (`stream_sse_v1plus` in
gradio_client/utils.py): ~170 ms per call whatever the server does, the client's cost, not the demo's.
This client reads the stream like the page, on one kept-alive connection, and also returns how long the
server says the handler ran (the `duration` of Gradio's process_completed message), so that the round trip
can be set against the same request's server-side work, in the server process and with its settings.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from gradio_client.utils import is_file_obj_with_meta, traverse


class GradioHttpError(RuntimeError):
    """The server failed the call, or closed the stream without an answer."""


@dataclass(frozen=True)
class Answer:
    """One call's outputs and the seconds the server spent in the handler."""

    outputs: list[Any]
    server_seconds: float


class GradioHttpClient:
    """Calls one Gradio app's named endpoints over HTTP: `GradioHttpClient(url).predict(path)`."""

    def __init__(self, url: str, timeout: float = 600.0) -> None:
        self._root = url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self._root}/gradio_api", timeout=timeout)
        self._endpoints: dict[str, tuple[int, list[Any]]] = {}
        self._session = uuid.uuid4().hex  # one per client, as one per open page: the server keeps its state

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GradioHttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def upload(self, path: Path) -> dict[str, Any]:
        """`path` uploaded to the server; its FileData, as a file input takes it."""
        with path.open("rb") as data:
            response = self._http.post("/upload", files={"files": (path.name, data)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, *inputs: object) -> Answer:
        """One call of `api_name`, every returned file fetched as the page fetches it.

        Inputs left out take their defaults, as the page sends its controls' values.
        """
        fn_index, defaults = self._endpoint(api_name)
        joined = self._http.post(
            "/queue/join",
            json={
                "data": [*inputs, *defaults[len(inputs) :]],
                "fn_index": fn_index,
                "session_hash": self._session,
                "event_data": None,
                "trigger_id": None,
            },
        )
        joined.raise_for_status()
        answer = self._completed(joined.json()["event_id"])
        for url in _file_urls(answer.outputs):
            self._http.get(url).raise_for_status()
        return answer

    def predict(self, path: Path) -> Answer:
        """The demo's /predict on the image at `path`."""
        return self.call("predict", self.upload(path))

    def save(self, file_data: dict[str, Any], folder: Path) -> Path:
        """A returned file (its FileData) downloaded into `folder`."""
        response = self._http.get(file_data["url"])
        response.raise_for_status()
        path = folder / Path(file_data["path"]).name
        path.write_bytes(response.content)
        return path

    def _endpoint(self, api_name: str) -> tuple[int, list[Any]]:
        """(fn_index, the default value of each input, None where it has none) of a named endpoint."""
        if not self._endpoints:
            config = self._http.get(f"{self._root}/config")
            config.raise_for_status()
            dependencies = config.json()["dependencies"]
            indices = {dep["api_name"]: dep["id"] for dep in dependencies if dep.get("api_name")}
            info = self._http.get("/info")
            info.raise_for_status()
            for name, endpoint in info.json()["named_endpoints"].items():
                defaults = [p.get("parameter_default") for p in endpoint["parameters"]]
                self._endpoints[name.lstrip("/")] = (indices[name.lstrip("/")], defaults)
        return self._endpoints[api_name]

    def _completed(self, event_id: str) -> Answer:
        with self._http.stream("GET", "/queue/data", params={"session_hash": self._session}) as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line.removeprefix("data:"))
                if message.get("event_id") != event_id or message["msg"] != "process_completed":
                    continue
                output = message.get("output") or {}
                if not message.get("success"):
                    raise GradioHttpError(f"the server failed the call: {output.get('error')}")
                return Answer(output["data"], float(output["duration"]))
        raise GradioHttpError("the event stream ended without an answer")


def _file_urls(outputs: list[Any]) -> list[str]:
    """The URLs of the files (FileData dicts) anywhere in a call's outputs."""
    urls: list[str] = []

    def collect(file: dict[str, Any]) -> dict[str, Any]:
        if file.get("url"):
            urls.append(file["url"])
        return file

    traverse(outputs, collect, is_file_obj_with_meta)
    return urls
