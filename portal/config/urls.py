from django.contrib import admin
from django.urls import include, path

from portal import health

admin.site.site_header = "Leukemia portal administration"
admin.site.site_title = "Leukemia portal admin"

handler400 = "portal.errors.bad_request"
handler500 = "portal.errors.server_error"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("", include("portal.analyses.urls")),
    path("patients/", include("portal.patients.urls")),
    path("accounts/", include("portal.accounts.urls")),
    path("audit/", include("portal.audit.urls")),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]
