from django.urls import path

from portal.analyses import cell_views, specimen_views, views

app_name = "analyses"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("about/", views.about, name="about"),
    path("upload/", views.upload, name="upload"),
    path("worklist/", views.worklist, name="worklist"),
    path("images/<int:pk>/", views.image_detail, name="image"),
    path("images/<int:pk>/file/", views.image_file, name="image_file"),
    path("images/<int:pk>/progress/", views.image_progress, name="image_progress"),
    path("images/<int:pk>/sign-off/", views.sign_off, name="sign_off"),
    path("specimens/<int:pk>/progress/", views.specimen_progress, name="specimen_progress"),
    path("analyses/<int:pk>/", views.analysis_detail, name="analysis"),
    path("analyses/<int:pk>/heatmap.png", views.heatmap_file, name="heatmap"),
    path("exports/", views.export, name="export"),
    path("specimens/<int:pk>/report/", views.specimen_report, name="report"),
    path("specimens/<int:pk>/report.pdf", views.specimen_report_pdf, name="report_pdf"),
    path("specimens/<int:pk>/fhir.json", views.specimen_fhir, name="fhir"),
    path("specimens/<int:pk>/differential/", cell_views.specimen_differential_page, name="differential"),
    path("specimens/<int:pk>/differential.csv", cell_views.differential_csv, name="differential_csv"),
    path("images/<int:pk>/annotated.png", cell_views.annotated_file, name="annotated"),
    path("cells/<int:pk>/crop.png", cell_views.cell_crop, name="cell_crop"),
    path("cells/<int:pk>/reclassify/", cell_views.reclassify, name="reclassify_cell"),
    path("images/<int:pk>/cells/add/", specimen_views.add_cell, name="add_cell"),
    path("specimens/<int:pk>/summary/", specimen_views.summary, name="specimen_summary"),
    path("specimens/<int:pk>/sign-off/", specimen_views.sign_off, name="specimen_sign_off"),
    path("specimens/<int:pk>/summary.csv", specimen_views.summary_csv, name="summary_csv"),
    path("specimens/<int:pk>/cells.csv", specimen_views.cells_csv, name="cells_csv"),
]
