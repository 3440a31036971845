from __future__ import annotations

from django.urls import path

from reporting import views

app_name = "reporting"
urlpatterns = [
    path("worklist/", views.worklist, name="worklist"),
]
