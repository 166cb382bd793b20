-- NocoDB's REST v2 bulk update writes the primary key back with the row
-- (UPDATE … SET "id" = $1, "nota" = $2 …). The NocoDB role is therefore granted UPDATE (id),
-- and this trigger refuses any real change of it, so a tracking row keeps its identity.
CREATE FUNCTION {{seguimiento_name}}_keep_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the id of a tracking row cannot change (% -> %)', OLD.id, NEW.id
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER {{seguimiento_name}}_keep_id BEFORE UPDATE OF id ON {{seguimiento}}
    FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION {{seguimiento_name}}_keep_id();
