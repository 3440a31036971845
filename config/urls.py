from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from core import views as core_views
from pacs import viewer as pacs_viewer
from ris import api as ris_api

router = DefaultRouter()
router.register("patients", ris_api.PatientViewSet, basename="patient")
router.register("orders", ris_api.OrderViewSet, basename="order")

urlpatterns = [
    path("", core_views.home, name="home"),
    path("health/", core_views.health, name="health"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("core/", include("core.urls")),
    path("ris/", include("ris.urls")),
    path("hl7/", include("ris.hl7.urls")),
    path("billing/", include("ris.billing.urls")),
    path("pacs/", include("pacs.urls")),
    path("dicomweb/", include("pacs.dicomweb.urls")),
    path("viewer/<str:study_instance_uid>/", pacs_viewer.viewer, name="viewer"),
    path("reporting/", include("reporting.urls")),
    path("api/", include(router.urls)),
    path("admin/", admin.site.urls),
]
