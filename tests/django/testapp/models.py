from django.db import models


class Order(models.Model):
    number = models.CharField(max_length=32, unique=True)
    customer = models.CharField(max_length=64)
    total_cents = models.IntegerField(default=0)


class Receipt(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="receipts")
    sent_by = models.CharField(max_length=64)
