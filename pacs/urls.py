from __future__ import annotations

from django.urls import path

from pacs import views

app_name = "pacs"
urlpatterns = [
    path("studies/", views.study_list, name="study-list"),
    path("studies/<int:pk>/", views.study_detail, name="study-detail"),
    path("studies/<int:pk>/download/", views.study_download, name="study-download"),
    path("studies/<int:pk>/delete/", views.study_delete, name="study-delete"),
    path("patient-studies/<int:patient_id>/", views.patient_studies, name="patient-studies"),
    path("reconciliation/", views.reconciliation_list, name="reconciliation-list"),
    path(
        "reconciliation/without-order/",
        views.studies_without_order,
        name="studies-without-order",
    ),
    path("reconciliation/<int:pk>/", views.reconciliation_detail, name="reconciliation-detail"),
    path(
        "reconciliation/<int:pk>/<slug:action>/",
        views.reconciliation_action,
        name="reconciliation-action",
    ),
]
