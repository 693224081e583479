-- An UPDATE that changes nothing keeps its version, updated_at and change number (0003). 0003
-- compared whole rows, but in a BEFORE trigger a stored generated column is not computed yet:
-- countries.contribution_usd is NULL in NEW, so every UPDATE of a country looked like a change
-- (a new version, and every sync client downloaded the row again). The trigger now leaves out
-- of the comparison the columns named in its arguments: the generated ones.
CREATE OR REPLACE FUNCTION track_row_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('covenant.stamping', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF TG_NARGS = 0 THEN
            IF NEW IS NOT DISTINCT FROM OLD THEN
                RETURN NEW;
            END IF;
        ELSIF (to_jsonb(NEW) - TG_ARGV) IS NOT DISTINCT FROM (to_jsonb(OLD) - TG_ARGV) THEN
            RETURN NEW;
        END IF;
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    ELSE
        NEW.version := 1;
    END IF;
    NEW.change_seq := NULL;
    RETURN NEW;
END
$$;

DROP TRIGGER countries_track_change ON countries;
CREATE TRIGGER countries_track_change BEFORE INSERT OR UPDATE ON countries
    FOR EACH ROW EXECUTE FUNCTION track_row_change('contribution_usd');
