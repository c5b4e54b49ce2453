from django.urls import path

from tenants.views import choose_organization

urlpatterns = [path("account/organization/", choose_organization, name="choose-organization")]
