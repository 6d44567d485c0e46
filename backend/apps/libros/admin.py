from django.contrib import admin

from .models import Libro


@admin.register(Libro)
class LibroAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "author", "year", "language", "pages")
    list_filter = ("language",)
    search_fields = ("title", "author", "synopsis", "isbn")
    ordering = ("id",)
