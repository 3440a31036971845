from __future__ import annotations

from django.urls import path

from ris.billing import views

app_name = "billing"
urlpatterns = [
    path("", views.charge_list, name="charge-list"),
    path("post/", views.post_charges, name="post"),
    path("export.csv", views.export_csv, name="export"),
    path("capture-missing/", views.capture_missing, name="capture-missing"),
    path("charges/<int:pk>/", views.charge_detail, name="charge-detail"),
    path("patients/<int:pk>/coverage/", views.coverage, name="coverage"),
    path("coverage/<int:pk>/delete/", views.coverage_delete, name="coverage-delete"),
]
