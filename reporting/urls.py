from __future__ import annotations

from django.urls import path

from reporting import distribution_views, views

app_name = "reporting"
urlpatterns = [
    path("worklist/", views.worklist, name="worklist"),
    path("studies/<int:pk>/claim/", views.claim, name="claim"),
    path("studies/<int:pk>/release/", views.release, name="release"),
    path("studies/<int:pk>/reassign/", views.reassign, name="reassign"),
    path("studies/<int:pk>/priors/", views.priors, name="priors"),
    path("studies/<int:pk>/report-panel/", views.viewer_report, name="viewer-report"),
    path("patients/<int:patient_id>/reports/", views.patient_reports, name="patient-reports"),
    path("reports/", views.report_list, name="report-list"),
    path("reports/<int:pk>/", views.report_detail, name="report"),
    path("reports/<int:pk>/autosave/", views.autosave, name="autosave"),
    path("reports/<int:pk>/sign/", views.sign, name="sign"),
    path("reports/<int:pk>/dictations/", views.upload_dictation, name="dictation-upload"),
    path("reports/<int:pk>/addenda/", views.addendum, name="addendum"),
    path("reports/<int:pk>/critical/", views.flag_critical, name="flag-critical"),
    path("reports/<int:pk>/acknowledge/", views.acknowledge, name="acknowledge"),
    path("reports/<int:pk>/transcribe/", views.transcribe, name="transcribe"),
    path("addenda/<int:pk>/sign/", views.sign_addendum, name="addendum-sign"),
    path("dictations/<int:pk>/audio/", views.dictation_audio, name="dictation-audio"),
    path("transcription/", views.transcription_queue, name="transcription-queue"),
    path("critical/", views.critical_list, name="critical-list"),
    path("turnaround/", views.turnaround, name="turnaround"),
    # Distribution: the report as a PDF (reporting/distribution_views.py).
    path("reports/<int:report_id>/pdf/", distribution_views.report_pdf, name="report-pdf"),
]
