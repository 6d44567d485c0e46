from django.db import models


class Libro(models.Model):
    """A book of the catalogue that the agent recommends from."""

    title = models.CharField(max_length=300)
    author = models.CharField(max_length=200)
    year = models.IntegerField(help_text="Year of first publication (negative for BC).")
    language = models.CharField(max_length=8, help_text="ISO 639-1 code of the original language.")
    genres = models.JSONField(default=list, help_text="List of genre slugs.")
    pages = models.PositiveIntegerField(null=True, blank=True)
    synopsis = models.TextField()
    isbn = models.CharField(max_length=17, blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["language"]), models.Index(fields=["year"])]

    def __str__(self) -> str:
        return f"{self.title} ({self.author}, {self.year})"

    def as_document_text(self) -> str:
        """The text that is embedded for this book: what a reader would search for."""
        genres = ", ".join(self.genres or [])
        return f"{self.title}. {self.author}. {genres}. {self.synopsis}"
