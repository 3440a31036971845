from __future__ import annotations

from django.urls import path

from ris.hl7 import views

app_name = "hl7"
urlpatterns = [
    path("", views.message_list, name="message-list"),
    path("in/<int:pk>/", views.inbound_detail, name="inbound-detail"),
    path("in/<int:pk>/reprocess/", views.inbound_reprocess, name="inbound-reprocess"),
    path("out/<int:pk>/", views.outbound_detail, name="outbound-detail"),
    path("out/<int:pk>/retry/", views.outbound_retry, name="outbound-retry"),
]
