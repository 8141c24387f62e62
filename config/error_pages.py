"""The 403 page: the admin's own look and language, not Django's bare "403 Forbidden".

A ``PermissionDenied`` raised by a Django view (the API answers its own JSON 403s) lands
here. People who meet it are in the admin, so the page is the admin's, with its header,
navigation and a way back, in the request's language (``templates/403.html``).
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext

from accounts.roles import ACCOUNT_MANAGERS


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    # The admin's context needs the user; a refusal raised before authentication has none.
    context = admin.site.each_context(request) if hasattr(request, "user") else {}
    context.update(title=gettext("Access denied"), managers_group=ACCOUNT_MANAGERS)
    return render(request, "403.html", context, status=403)
