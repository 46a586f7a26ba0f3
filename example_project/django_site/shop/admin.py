from django.contrib import admin

from shop.models import Customer, Order, SalesReport

admin.site.register(Customer)
admin.site.register(Order)
admin.site.register(SalesReport)
