-- facusync schema, version 4: a conduce is identified as SQL Server's usual collation (CI_AS)
-- identifies it, case and trailing spaces ignored. 'C-0000004', 'c-0000004' and 'C-0000004 '
-- are one conduce: a change of spelling in the view renames the row (the consumer's upsert
-- conflicts on this index), and the planners' tracking row follows its key (ON UPDATE
-- CASCADE), so a note is never detached by a change the source considers no change.
-- Tokens as in 001.

-- Rows an older version created for one conduce under two spellings cannot be merged without
-- choosing whose tracking row wins: that is for people to decide. Say which, and how.
DO $$
DECLARE
    groups text;
BEGIN
    SELECT string_agg(spellings, '; ') INTO groups FROM (
        SELECT string_agg(quote_literal(conduce), ' = ' ORDER BY conduce) AS spellings
        FROM {{vista}} GROUP BY lower(rtrim(conduce, ' ')) HAVING count(*) > 1
        ORDER BY 1 LIMIT 20) AS same;
    IF groups IS NOT NULL THEN
        RAISE EXCEPTION 'rows of % that SQL Server considers the same conduce: %', '{{vista}}', groups
            USING HINT = 'for each group keep one row: copy the planners'' columns into the tracking'
                ' row of the spelling the view has now, delete the other tracking row and its'
                ' datos_vista row, then run `facusync migrate` again';
    END IF;
END $$;

CREATE UNIQUE INDEX {{vista_name}}_conduce_ci_key ON {{vista}} (lower(rtrim(conduce, ' ')));

-- The tracking row follows its conduce when the view changes the key's spelling.
DO $$
DECLARE
    fk name;
BEGIN
    FOR fk IN SELECT conname FROM pg_constraint
              WHERE conrelid = '{{seguimiento}}'::regclass AND confrelid = '{{vista}}'::regclass
                AND contype = 'f'
    LOOP
        EXECUTE format('ALTER TABLE {{seguimiento}} DROP CONSTRAINT %I', fk);
    END LOOP;
END $$;
ALTER TABLE {{seguimiento}} ADD CONSTRAINT {{seguimiento_name}}_conduce_fkey
    FOREIGN KEY (conduce) REFERENCES {{vista}} (conduce) ON DELETE RESTRICT ON UPDATE CASCADE;

-- A key may change its spelling, never become another conduce (a note cannot move).
CREATE FUNCTION {{vista_name}}_keep_conduce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a conduce cannot become another one (% -> %); only its case or trailing '
        'spaces may change', OLD.conduce, NEW.conduce
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER {{vista_name}}_keep_conduce BEFORE UPDATE OF conduce ON {{vista}}
    FOR EACH ROW
    WHEN (lower(rtrim(NEW.conduce, ' ')) IS DISTINCT FROM lower(rtrim(OLD.conduce, ' ')))
    EXECUTE FUNCTION {{vista_name}}_keep_conduce();

-- The roles that may write the synced values (the sync role, from `--create-roles`) may now
-- respell a key too: grant what `migrate --refresh-grants` would, so an upgrade that only
-- migrates keeps the consumer writing.
DO $$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN SELECT DISTINCT p.grantee FROM information_schema.column_privileges p
                   WHERE p.table_schema = 'public' AND p.table_name = '{{vista_name}}'
                     AND p.column_name = 'ultima_modificacion' AND p.privilege_type = 'UPDATE'
                     AND p.grantee <> current_user
    LOOP
        EXECUTE format('GRANT UPDATE (conduce) ON {{vista}} TO %I', grantee);
    END LOOP;
END $$;
