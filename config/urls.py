from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import include, path
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.roles import ACCOUNT_MANAGERS
from notifications.webhooks import tracking_webhook

api_v1 = [
    path("", include("backoffice.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

admin.site.site_header = _("Usage limits back-office")
admin.site.site_title = _("Usage limits")
admin.site.index_title = _("Accounts, usage and notifications")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("i18n/", include("django.conf.urls.i18n")),
    # The configured provider's tracking webhook only, and only with a secret (see the view).
    path("anymail/<str:provider>/tracking/", tracking_webhook, name="anymail-tracking"),
]


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 403 page: the admin's own frame and language, not Django's bare "403 Forbidden".

    A ``PermissionDenied`` raised by a Django view (the API answers its own JSON 403s)
    lands here; people meet it in the admin, so the page is the admin's, with its header,
    navigation and a way back (``templates/403.html``).
    """
    # The admin's context needs the user; a refusal raised before authentication has none.
    context = admin.site.each_context(request) if hasattr(request, "user") else {}
    context.update(title=gettext("Access denied"), managers_group=ACCOUNT_MANAGERS)
    return render(request, "403.html", context, status=403)


handler403 = permission_denied
