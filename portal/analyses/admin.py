from django.contrib import admin

from portal.analyses.models import Analysis, Cell, CellAnalysis, Image, Review
from portal.audit.admin import ReadOnlyAdmin


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ("id", "specimen", "original_name", "width", "height", "uploaded_at")


@admin.register(Analysis)
class AnalysisAdmin(ReadOnlyAdmin):
    list_display = ("id", "image", "model_name", "model_version", "status", "label", "confidence", "created_at")
    list_filter = ("status", "model_name")


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ("analysis", "reviewer_name", "decision", "final_label", "signed_at")


@admin.register(CellAnalysis)
class CellAnalysisAdmin(ReadOnlyAdmin):
    list_display = ("id", "image", "model_name", "model_version", "status", "created_at", "completed_at")
    list_filter = ("status", "model_name")


@admin.register(Cell)
class CellAdmin(ReadOnlyAdmin):
    list_display = ("id", "image", "index", "label", "abstained", "reviewed_label", "reviewed_by", "reviewed_at")
    list_filter = ("label", "reviewed_label", "abstained")
