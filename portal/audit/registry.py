"""The audit actions, in one registry (as Wagtail's log_action_registry): code -> human label."""

from __future__ import annotations

__all__ = ["ACTIONS", "READS", "label_for"]

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
    "image.upload_refused": "Upload refused (files not saved, with the reasons)",
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
    "export.cells_csv": "Exported the cells of a specimen (CSV)",
    "cell.add": "Added a cell the model missed",
    "cell.add_refused": "Adding a cell refused",
    "specimen.summary": "Viewed the specimen summary",
    "specimen.sign_off": "Signed off specimen",
    "specimen.sign_off_refused": "Specimen sign-off refused",
    "export.summary_csv": "Exported the specimen summary (CSV)",
    "dataset.export": "Exported the lab's confirmed data (training dataset)",
    "model.promote": "Promoted a model version (made it the default)",
    "model.rollback": "Rolled a model back to its previous version",
    "model.switch_refused": "Model promotion or rollback refused",
    "model.list": "Viewed the models and their versions",
    "model.drift": "Viewed the drift watch",
}

#: Reads: who looked at what (a record, a list, a search, a page made for reading such as the printable
#: report or the differential). The audit page's "changes only" hides them; exports (data leaving the
#: portal) and refusals stay listed. Every read's label says so ("Viewed", "Listed", "Searched").
READS: frozenset[str] = frozenset(
    code for code, label in ACTIONS.items() if label.startswith(("Viewed", "Listed", "Searched"))
)


def label_for(action: str) -> str:
    return ACTIONS.get(action, action)
