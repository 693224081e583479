-- An UPDATE that changes nothing is no change: it keeps its version, updated_at and change
-- number, so sync clients do not download rows that did not change.
CREATE OR REPLACE FUNCTION track_row_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('covenant.stamping', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW IS NOT DISTINCT FROM OLD THEN
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

-- A project naming an unknown country is a foreign-key violation, not a NULL region.
CREATE OR REPLACE FUNCTION project_region_from_country() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.country_code IS DISTINCT FROM OLD.country_code THEN
        SELECT region INTO NEW.region FROM countries WHERE code = NEW.country_code;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'country % does not exist', NEW.country_code
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'projects_country_region';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
