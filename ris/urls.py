from __future__ import annotations

from django.urls import path

from ris import views

app_name = "ris"
urlpatterns = [
    path("today/", views.today, name="today"),
    path("exams/", views.exams_today, name="exams-today"),
    path("patients/", views.patient_list, name="patient-list"),
    path("patients/<int:pk>/", views.patient_detail, name="patient-detail"),
    path("me/", views.my_record, name="my-record"),
    path("orders/", views.order_list, name="order-list"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
    path("orders/<int:pk>/check-in/", views.check_in, name="check-in"),
]
