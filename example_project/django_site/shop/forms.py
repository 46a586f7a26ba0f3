from django import forms

from shop.models import Order


class OrderForm(forms.ModelForm):
    class Meta:
        model = Order
        fields = ["customer_email", "item", "quantity", "unit_price_cents"]
        labels = {"unit_price_cents": "Unit price (cents)"}
