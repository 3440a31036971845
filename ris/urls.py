from __future__ import annotations

from django.urls import path

from ris import views, views_scheduling

app_name = "ris"
urlpatterns = [
    path("today/", views.today, name="today"),
    path("exams/", views.exams_today, name="exams-today"),
    path("patients/", views.patient_list, name="patient-list"),
    path("patients/<int:pk>/", views.patient_detail, name="patient-detail"),
    path("patients/new/", views.patient_register, name="patient-register"),
    path("patients/<int:pk>/edit/", views.patient_edit, name="patient-edit"),
    path("patients/<int:pk>/merge/", views.patient_merge, name="patient-merge"),
    path("patients/<int:pk>/orders/new/", views.order_create, name="order-create"),
    path("procedures/search/", views.procedure_search, name="procedure-search"),
    path("orders/<int:pk>/instructions/", views.order_instructions, name="order-instructions"),
    path("me/", views.my_record, name="my-record"),
    path("orders/", views.order_list, name="order-list"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
    path("orders/<int:pk>/check-in/", views.check_in, name="check-in"),
    path("calendar/", views_scheduling.calendar, name="calendar"),
    path("calendar/book/", views_scheduling.book, name="calendar-book"),
    path("calendar/move/", views_scheduling.move, name="calendar-move"),
    path("orders/<int:pk>/cancel/", views_scheduling.cancel, name="order-cancel"),
    path("steps/<int:pk>/start/", views_scheduling.start_exam, name="step-start"),
    path("steps/<int:pk>/complete/", views_scheduling.complete_exam, name="step-complete"),
    path("steps/<int:pk>/no-show/", views_scheduling.no_show, name="step-no-show"),
]
