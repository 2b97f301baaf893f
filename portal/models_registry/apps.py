from django.apps import AppConfig


class ModelsRegistryConfig(AppConfig):
    name = "portal.models_registry"
    label = "models_registry"
    verbose_name = "Model versions, the update loop and drift"
