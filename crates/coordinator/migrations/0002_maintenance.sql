-- Maintenance windows (`put_maintenance`, `list_maintenance`, `delete_maintenance`): the
-- admin API's `MaintenanceWindow`, prost-encoded. Few per tenant (at most 100), read whole
-- by the hub at start and after every change.
CREATE TABLE maintenance_windows (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX maintenance_windows_tenant ON maintenance_windows (tenant_id);
