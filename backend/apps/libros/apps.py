from django.apps import AppConfig


class LibrosConfig(AppConfig):
    name = "apps.libros"
    label = "libros"
    verbose_name = "Catalogue"
