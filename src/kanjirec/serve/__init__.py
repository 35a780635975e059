"""The HTTP recognition service (``kanjirec serve``): `app` (routes, input checks), `batching`
(concurrent requests answered by one model call), `client` (a small client for scripts, tests and
the load test). The browser page will be served from here too once it is built."""
