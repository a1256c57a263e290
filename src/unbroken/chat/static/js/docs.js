// Swagger UI for the service's OpenAPI document (/docs); its files come with the service.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
