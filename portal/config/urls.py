from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from django.views.generic import RedirectView

from portal import health

admin.site.site_header = "Leukemia portal administration"
admin.site.site_title = "Leukemia portal admin"

handler400 = "portal.errors.bad_request"
handler403 = "portal.errors.permission_denied"
handler404 = "portal.errors.page_not_found"
handler500 = "portal.errors.server_error"

urlpatterns = [
    path(
        "favicon.ico",
        login_not_required(RedirectView.as_view(url="/static/portal/favicon.svg", permanent=True)),
        name="favicon",
    ),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("portal.analyses.urls")),
    path("patients/", include("portal.patients.urls")),
    path("accounts/", include("portal.accounts.urls")),
    path("audit/", include("portal.audit.urls")),
    path("models/", include("portal.models_registry.urls")),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]
