"""The audit actions, in one registry (as Wagtail's log_action_registry): code -> human label."""

from __future__ import annotations

__all__ = ["ACTIONS", "label_for"]

ACTIONS: dict[str, str] = {
    "user.login": "Logged in",
    "user.logout": "Logged out",
    "user.login_failed": "Failed login",
    "user.locked_out": "Locked out after repeated failed logins",
    "user.otp_enrolled": "Enrolled an authenticator app (second factor)",
    "user.otp_verified": "Gave a correct second-factor code",
    "user.otp_failed": "Wrong second-factor code",
    "user.otp_throttled": "Second-factor code refused: too many wrong codes, wait",
    "user.otp_removed": "Removed an authenticator app in admin (lost phone)",
    "user.otp_required": "Refused: second-factor code not given yet",
    "user.register": "Registered (awaiting approval)",
    "user.password_change": "Changed password",
    "user.admin_change": "Changed user in admin (approval, roles)",
    "user.admin_create": "Created user in admin",
    "patient.create": "Created patient",
    "patient.edit": "Edited patient",
    "patient.view": "Viewed patient",
    "patient.search": "Searched or listed patients",
    "specimen.create": "Created specimen",
    "specimen.edit": "Edited specimen",
    "specimen.view": "Viewed specimen",
    "specimen.list": "Listed specimens",
    "image.upload": "Uploaded images",
    "image.view": "Viewed image results",
    "image.list": "Listed images",
    "analysis.complete": "Analysis completed",
    "analysis.reject": "Analysis rejected by the model server",
    "analysis.fail": "Analysis failed",
    "analysis.view": "Viewed analysis",
    "analysis.list": "Listed analyses",
    "review.list": "Listed reviews",
    "review.view": "Viewed review",
    "analysis.sign_off": "Signed off analysis (per model, earlier versions)",
    "image.sign_off": "Signed off image",
    "image.sign_off_refused": "Image sign-off refused",
    "export.csv": "Exported analyses (CSV)",
    "export.report_html": "Viewed printable report",
    "export.report_pdf": "Exported report (PDF)",
    "export.fhir": "Exported results (FHIR Bundle)",
    "analysis.worklist": "Viewed the sign-off worklist",
    "analysis.sign_off_refused": "Sign-off refused (per model, earlier versions)",
    "access.denied": "Refused: the role does not allow it",
    "api.token": "Issued API token",
    "cells.complete": "Cell analysis completed",
    "cells.reject": "Cell analysis rejected by the model server",
    "cells.fail": "Cell analysis failed",
    "cell.list": "Listed cells",
    "cell.view": "Viewed cell",
    "cell.reclassify": "Reclassified a cell",
    "cell.reclassify_refused": "Cell reclassification refused",
    "specimen.differential": "Viewed the differential",
    "export.differential_csv": "Exported the differential (CSV)",
}


def label_for(action: str) -> str:
    return ACTIONS.get(action, action)
