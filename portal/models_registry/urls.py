from django.urls import path

from portal.models_registry import views

app_name = "models_registry"
urlpatterns = [
    path("", views.models_page, name="models"),
    path("drift/", views.drift_page, name="drift"),
]
