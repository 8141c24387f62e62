"""Pagination of every API list: ``?page=N``, a whole number from 1 to ``MAX_PAGE``.

A page number that is not one (``0``, ``-1``, ``abc``, ``1.5``, more than ``MAX_PAGE``,
DRF's ``last``, an empty ``?page=``) answers 400 keyed by ``page``, as the schema's integer
says; a page past the last one still answers 404, as DRF does. Without ``page``, the first.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import pagination
from rest_framework.exceptions import ValidationError

# The largest 32-bit integer: what a client generated from the schema can send.
MAX_PAGE = 2**31 - 1


class PageNumberPagination(pagination.PageNumberPagination):
    last_page_strings = ()

    def get_page_number(self, request: Any, paginator: Any) -> int:
        raw = request.query_params.get(self.page_query_param, "1")
        digits = raw.lstrip("0")
        # Digits only, and no more of them than MAX_PAGE has before converting.
        if not (
            raw.isascii()
            and raw.isdigit()
            and len(digits) <= len(str(MAX_PAGE))
            and 1 <= int(raw) <= MAX_PAGE
        ):
            raise ValidationError(
                {
                    self.page_query_param: [
                        _("A valid page number is required: a whole number from 1 to %(max)s.")
                        % {"max": MAX_PAGE}
                    ]
                }
            )
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"].update(minimum=1, maximum=MAX_PAGE)
        return parameters
