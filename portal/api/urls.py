from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import IsAuthenticated
from rest_framework.routers import DefaultRouter

from portal.api import views
from portal.models_registry.api import ModelsView


class _Router(DefaultRouter):
    """The browsable API root needs only a login (it lists endpoints, no data)."""

    def get_api_root_view(self, api_urls=None):  # type: ignore[no-untyped-def]
        view = super().get_api_root_view(api_urls)
        view.initkwargs["permission_classes"] = [IsAuthenticated]  # type: ignore[attr-defined]
        return view


router = _Router()
router.register("patients", views.PatientViewSet, basename="patient")
router.register("specimens", views.SpecimenViewSet, basename="specimen")
router.register("images", views.ImageViewSet, basename="image")
router.register("analyses", views.AnalysisViewSet, basename="analysis")
router.register("reviews", views.ReviewViewSet, basename="review")
router.register("cells", views.CellViewSet, basename="cell")

app_name = "api"
urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(permission_classes=[IsAuthenticated]), name="schema"),
    path(  # a page for people: anonymous visitors go to the login page, not to a bare 401
        "docs/",
        login_required(SpectacularSwaggerView.as_view(url_name="api:schema", permission_classes=[IsAuthenticated])),
        name="docs",
    ),
    path("models/", ModelsView.as_view(), name="models"),
    path("", include(router.urls)),
]
