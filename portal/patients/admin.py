from django.contrib import admin

from portal.audit.admin import ReadOnlyAdmin
from portal.patients.models import Patient, Specimen


@admin.register(Patient)
class PatientAdmin(ReadOnlyAdmin):
    list_display = ("mrn", "name", "date_of_birth", "sex", "created_at")
    search_fields = ("mrn", "name")


@admin.register(Specimen)
class SpecimenAdmin(ReadOnlyAdmin):
    list_display = ("accession", "patient", "kind", "collected_at")
    search_fields = ("accession", "patient__mrn", "patient__name")
