"""API permissions: authenticated, and the model permission for the method (view for reads)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import DjangoModelPermissions
from rest_framework.request import Request

__all__ = ["CellPermission", "ImagePermission", "ModelPermissions", "SignOffPermission"]


class ModelPermissions(DjangoModelPermissions):
    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.add_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }


class SignOffPermission(ModelPermissions):
    """Creating a review (signing off) needs analyses.sign_off_analysis as well."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not super().has_permission(request, view):
            return False
        if request.method == "POST":
            return bool(request.user.has_perm("analyses.sign_off_analysis"))
        return True


class CellPermission(ModelPermissions):
    """Reading cells needs analyses.view_cell; reclassifying one (POST) needs analyses.reclassify_cell too."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if not request.user.has_perm("analyses.view_cell"):
            return False
        if request.method == "POST":
            return bool(request.user.has_perm("analyses.reclassify_cell"))
        return request.method in ("GET", "HEAD", "OPTIONS")


class ImagePermission(ModelPermissions):
    """Reading images (with their analyses and consensus, as the image page) needs analyses.view_analysis too."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and bool(request.user.has_perm("analyses.view_analysis"))
