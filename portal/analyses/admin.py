from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from portal.analyses.models import Analysis, Image, Review


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("id", "specimen", "original_name", "width", "height", "uploaded_at")
    readonly_fields = ("storage_name", "sha256")


@admin.register(Analysis)
class AnalysisAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "model_name", "model_version", "status", "label", "confidence", "created_at")
    list_filter = ("status", "model_name")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("analysis", "reviewer_name", "decision", "final_label", "signed_at")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
