"""HTTP transports under the client: the h11 pool, its asyncio stream, TLS and capped bodies.

Nothing here knows the API's JSON: these modules move bytes and say what a failure means
(did the request leave?). :class:`~nanobanana_async._http.fast.FastTransport` is the transport
the client builds for itself.
"""
