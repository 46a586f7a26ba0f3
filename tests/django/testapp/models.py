from django.db import models


class Order(models.Model):
    number = models.CharField(max_length=32, unique=True)
    customer = models.CharField(max_length=64)
    total_cents = models.IntegerField(default=0)


class Receipt(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="receipts")
    sent_by = models.CharField(max_length=64)


class JobRun(models.Model):
    """One run of ``outbox.counted`` (tests/outbox/): a row per run, never unique, so a job that
    ran twice leaves two rows (duplicates = rows - distinct job ids)."""

    job_id = models.CharField(max_length=64, db_index=True)
    pid = models.IntegerField()
    attempt = models.IntegerField()
    ran_at = models.FloatField()  # time.time() when the handler started
