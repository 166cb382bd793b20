-- facusync schema, version 2: indexes for what the sync and NocoDB filter by, the read-only
-- reporting view, and a safer search_path for the SECURITY DEFINER tracking trigger.
-- Tokens as in 001 ({{vista}}, {{seguimiento}}, {{vista_name}}, {{seguimiento_name}}).

-- The consumer's monotonic guard and reconcile compare versions; `facusync status` asks for
-- the newest one.
CREATE INDEX {{vista_name}}_ultima_mod_idx ON {{vista}} (ultima_modificacion);
-- Planners filter by date, and by "not billed yet" ordered by date.
CREATE INDEX {{vista_name}}_fecha_emision_idx ON {{vista}} (fecha_emision);
CREATE INDEX {{vista_name}}_facturado_idx ON {{vista}} (facturado, fecha_emision);
-- Few rows are ever soft-deleted: a partial index finds them without weighing on the rest.
CREATE INDEX {{vista_name}}_eliminado_idx ON {{vista}} (eliminado_at) WHERE eliminado_en_origen;
-- {{seguimiento}}.conduce needs no index of its own: its UNIQUE constraint is one.

-- pg_temp is searched first unless named: list it last, so that no temporary table of the
-- calling role can stand in for the people's table inside this SECURITY DEFINER function.
ALTER FUNCTION {{vista_name}}_create_tracking() SET search_path = pg_catalog, public, pg_temp;

-- Everything in one place for reports: every synced row (soft-deleted ones too, flagged by
-- eliminado_en_origen) with its tracking columns. A join view is not updatable, and the roles
-- get SELECT only: edits go through {{seguimiento}}.
CREATE VIEW v_planificacion AS
SELECT
    v.conduce,
    v.fecha_emision,
    v.facturado,
    v.numero_factura,
    v.codigo_cliente,
    v.cliente,
    v.ultima_modificacion,
    v.eliminado_en_origen,
    v.eliminado_at,
    s.id         AS seguimiento_id,
    s.nota,
    s.ruta,
    s.trabajado,
    s.preparador,
    v.updated_at AS vista_updated_at,
    s.updated_at AS seguimiento_updated_at
FROM {{vista}} v
LEFT JOIN {{seguimiento}} s ON s.conduce = v.conduce;

COMMENT ON TABLE {{vista}} IS
    'facusync: copy of the SQL Server view, written only by the sync. Read-only for people.';
COMMENT ON TABLE {{seguimiento}} IS
    'facusync: planners'' tracking, one row per conduce. Edit nota, ruta, trabajado, preparador.';
COMMENT ON VIEW v_planificacion IS
    'facusync: read-only report joining the synced rows and their tracking columns.';
COMMENT ON COLUMN {{vista}}.eliminado_en_origen IS
    'true when the conduce is gone from the SQL Server view; the row is kept, never deleted.';
