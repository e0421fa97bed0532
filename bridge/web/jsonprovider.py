"""Flask's JSON provider, answering through orjson (see :mod:`bridge.core.jsoncodec`)."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response as BaseResponse

from ..core.jsoncodec import encode_answer, loads

__all__ = ["FastJSONProvider"]


class FastJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson answers: the same sorted keys and types, faster.

    Non-ASCII characters are sent as UTF-8 rather than ``\\u`` escapes. Dates and
    dataclasses still go through Flask's ``default`` (dates as HTTP dates), and the
    debug mode's indented output is Flask's own.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return super().loads(s, **kwargs) if kwargs else loads(s)

    def response(self, *args: Any, **kwargs: Any) -> BaseResponse:
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = encode_answer(obj, self.default)
        except orjson.JSONEncodeError:
            return super().response(*args, **kwargs)
        return self._app.response_class(body, mimetype=self.mimetype)  # type: ignore[arg-type]
