"""The Label Studio sensor says in one line why it could not sync (server down, token refused), and
tries again next tick, rather than failing each tick with a stack trace."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from resources import SettingsResource, StoreResource
from sensors.labeling import label_studio_answers
from tests.conftest import free_port


class _Refuses(BaseHTTPRequestHandler):
    """A server that answers every API call as Label Studio does a bad token."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"detail": "Invalid token."}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tick(tmp_path, url: str, monkeypatch, token: str | None = "a-token"):
    if token is None:
        monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    else:
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    settings = SettingsResource(overrides={"labelstudio.url": url, "store.root": str(tmp_path / "s")})
    resources = {"settings": settings, "store": StoreResource(settings=settings)}
    with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources=resources) as context:
        return label_studio_answers(context)


@pytest.mark.parametrize(
    ("where", "token", "said"),
    [
        ("down", "a-token", "cannot be reached (ConnectError"),
        ("refusing", "a-token", "refused the access token (HTTP 401)"),
        ("down", None, "no access token"),
    ],
)
def test_a_tick_that_cannot_sync_says_why_in_one_line(tmp_path, monkeypatch, refusing_server, where, token, said):
    url = refusing_server if where == "refusing" else f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = _tick(tmp_path, url, monkeypatch, token)
    assert isinstance(result, dg.SkipReason) and said in result.skip_message
    assert "\n" not in result.skip_message and result.skip_message.startswith("not synced: ")
