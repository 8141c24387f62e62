from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

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
