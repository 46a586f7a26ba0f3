"""A tiny shop: customers, orders, and a daily sales report built by a background job."""

from __future__ import annotations

from django.db import models
from django.urls import reverse


class Customer(models.Model):
    """The customer directory, keyed by e-mail (orders may come from guests: no foreign key)."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)
    tier = models.CharField(max_length=20, default="standard")

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class Order(models.Model):
    customer_email = models.EmailField()
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    unit_price_cents = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    #: The id of the confirmation mail's job, to show its status.
    confirmation_job_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    @property
    def number(self) -> str:
        return f"A-{self.pk:05d}"

    @property
    def total_cents(self) -> int:
        return self.quantity * self.unit_price_cents

    def get_absolute_url(self) -> str:
        return reverse("shop:order-detail", args=[self.pk])

    def __str__(self) -> str:
        return self.number


class SalesReport(models.Model):
    """One day's sales, rebuilt from the orders by the ``shop.build_sales_report`` job."""

    day = models.DateField(unique=True)
    orders = models.PositiveIntegerField()
    revenue_cents = models.PositiveBigIntegerField()
    built_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"sales of {self.day}"
