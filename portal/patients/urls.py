from django.urls import path

from portal.patients import views

app_name = "patients"
urlpatterns = [
    path("", views.patient_list, name="list"),
    path("new/", views.patient_create, name="create"),
    path("<int:pk>/", views.patient_detail, name="detail"),
    path("<int:pk>/edit/", views.patient_edit, name="edit"),
    path("<int:patient_pk>/specimens/new/", views.specimen_create, name="specimen_create"),
    path("specimens/<int:pk>/", views.specimen_detail, name="specimen"),
    path("specimens/<int:pk>/edit/", views.specimen_edit, name="specimen_edit"),
]
