from django.urls import path

from shop import views

app_name = "shop"

urlpatterns = [
    path("", views.order_list, name="order-list"),
    path("orders/new/", views.order_create, name="order-create"),
    path("orders/<int:pk>/", views.order_detail, name="order-detail"),
]
