from __future__ import annotations

from django.urls import path

from pacs import views

app_name = "pacs"
urlpatterns = [
    path("studies/", views.study_list, name="study-list"),
    path("studies/<int:pk>/", views.study_detail, name="study-detail"),
    path("studies/<int:pk>/download/", views.study_download, name="study-download"),
    path("studies/<int:pk>/delete/", views.study_delete, name="study-delete"),
]
