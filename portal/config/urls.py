from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Leukemia portal administration"
admin.site.site_title = "Leukemia portal admin"

urlpatterns = [
    path("", include("portal.analyses.urls")),
    path("patients/", include("portal.patients.urls")),
    path("accounts/", include("portal.accounts.urls")),
    path("audit/", include("portal.audit.urls")),
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]
