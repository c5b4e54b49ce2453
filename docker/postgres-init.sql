-- The two roles DESIGN.md describes. The owner migrates; the application role owns nothing and
-- cannot bypass row-level security. Passwords come from the compose file's environment.
\set owner_password `echo "$AGENTAPI_OWNER_PASSWORD"`
\set app_password `echo "$AGENTAPI_APP_PASSWORD"`
CREATE ROLE agentapi_owner LOGIN PASSWORD :'owner_password' NOSUPERUSER NOBYPASSRLS;
CREATE ROLE agentapi_app LOGIN PASSWORD :'app_password' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
CREATE DATABASE agentapi OWNER agentapi_owner;
\connect agentapi
REVOKE ALL ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO agentapi_owner;
GRANT USAGE ON SCHEMA public TO agentapi_app;
