"""A small client for the service, on the standard library (scripts, tests and the load test)."""

from __future__ import annotations

import http.client
import json
import uuid


def multipart_image(data: bytes, filename: str = "image.png", field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body carrying one file: (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection to a running service."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, timeout: float = 30.0):
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        """(status, parsed JSON body or raw text)."""
        headers = {"Content-Type": content_type} if content_type else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return response.status, raw.decode("utf-8", "replace")

    def health(self):
        return self.request("GET", "/health")

    def recognize_image(self, data: bytes, top_k: int = 10, filename: str = "image.png"):
        body, content_type = multipart_image(data, filename)
        return self.request("POST", f"/recognize?top_k={top_k}", body, content_type)

    def recognize_strokes(self, strokes: list, width: float, height: float, top_k: int = 10):
        body = json.dumps({"width": width, "height": height, "strokes": strokes}).encode()
        return self.request("POST", f"/recognize?top_k={top_k}", body, "application/json")

    def close(self) -> None:
        self.connection.close()
